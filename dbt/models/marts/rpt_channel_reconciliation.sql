-- What each source says per UTC day, channel and store, next to what the marts hold: the history's orders,
-- the live source's orders (online: current CDC state; in store: first confirmations) with what was dropped on
-- the way (re-delivered CDC changes, re-sent emails, hard-deleted orders), and the daily sales mart.
-- A row is reconciled when the mart equals history + live source, order for order and cent for cent.
with

history_figures as (

    select
        {{ utc_date('ordered_at') }} as order_date,
        channel,
        store_id,
        'history' as source,
        count(distinct order_id) as order_count,
        sum(line_total + tax) as gross_amount,
        0 as records_received,
        0 as records_dropped,
        0 as orders_deleted
    from {{ ref('stg_history__order_lines') }}
    group by {{ utc_date('ordered_at') }}, channel, store_id

),

online_changes as (

    select
        order_id,
        min(created_at) as created_at,
        sum(delivery_count) as records_received,
        sum(delivery_count - 1) as records_dropped,
        max(case when is_delete then 1 else 0 end) as is_deleted
    from {{ ref('stg_onlinedb__orders') }}
    group by order_id

),

online_orders as (

    select
        order_id,
        subtotal + tax as gross_amount
    from {{ ref('int_online_orders_collapsed') }}

),

online_figures as (

    select
        {{ utc_date('online_changes.created_at') }} as order_date,
        'online' as channel,
        cast(null as varchar) as store_id,
        'live' as source,
        count(online_orders.order_id) as order_count,
        coalesce(sum(online_orders.gross_amount), 0) as gross_amount,
        sum(online_changes.records_received) as records_received,
        sum(online_changes.records_dropped) as records_dropped,
        sum(online_changes.is_deleted) as orders_deleted
    from online_changes
    left join online_orders on online_changes.order_id = online_orders.order_id
    group by {{ utc_date('online_changes.created_at') }}

),

store_figures as (

    select
        {{ utc_date('ordered_at') }} as order_date,
        'in_store' as channel,
        store_id,
        'live' as source,
        count(*) as order_count,
        sum(total) as gross_amount,
        sum(1 + resend_count) as records_received,
        sum(resend_count) as records_dropped,
        0 as orders_deleted
    from {{ ref('int_store_orders_deduplicated') }}
    group by {{ utc_date('ordered_at') }}, store_id

),

mart_figures as (

    select
        order_date,
        channel,
        store_id,
        'marts' as source,
        order_count,
        gross_amount,
        0 as records_received,
        0 as records_dropped,
        0 as orders_deleted
    from {{ ref('fct_daily_sales') }}

),

figures as (

    select * from history_figures
    union all
    select * from online_figures
    union all
    select * from store_figures
    union all
    select * from mart_figures

),

pivoted as (

    select
        order_date,
        channel,
        store_id,
        sum(case when source = 'history' then order_count else 0 end) as history_orders,
        sum(case when source = 'history' then gross_amount else 0 end) as history_gross_amount,
        sum(case when source = 'live' then records_received else 0 end) as live_records_received,
        sum(case when source = 'live' then records_dropped else 0 end) as live_records_dropped,
        sum(case when source = 'live' then orders_deleted else 0 end) as live_orders_deleted,
        sum(case when source = 'live' then order_count else 0 end) as live_orders,
        sum(case when source = 'live' then gross_amount else 0 end) as live_gross_amount,
        sum(case when source = 'marts' then order_count else 0 end) as mart_orders,
        sum(case when source = 'marts' then gross_amount else 0 end) as mart_gross_amount
    from figures
    group by order_date, channel, store_id

),

typed as (

    select
        cast(order_date as varchar) || '|' || channel || '|' || coalesce(store_id, '-') as reconciliation_key,
        order_date,
        channel,
        store_id,
        cast(history_orders as bigint) as history_orders,
        {{ money('history_gross_amount') }} as history_gross_amount,
        cast(live_records_received as bigint) as live_records_received,
        cast(live_records_dropped as bigint) as live_records_dropped,
        cast(live_orders_deleted as bigint) as live_orders_deleted,
        cast(live_orders as bigint) as live_orders,
        {{ money('live_gross_amount') }} as live_gross_amount,
        cast(mart_orders as bigint) as mart_orders,
        {{ money('mart_gross_amount') }} as mart_gross_amount
    from pivoted

),

-- Compared after the casts to exact money, so no engine's intermediate type for the sums decides the result.
final as (

    select
        *,
        {{ money('mart_gross_amount - history_gross_amount - live_gross_amount') }} as gross_difference,
        (
            mart_orders = history_orders + live_orders
            and mart_gross_amount = history_gross_amount + live_gross_amount
        ) as is_reconciled
    from typed

)

select * from final
