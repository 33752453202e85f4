-- One row per calendar day from the start of the history to well past today.
with

days as (

    {{ dbt.date_spine(
        'day',
        "cast('" ~ var('date_spine_start') ~ "' as date)",
        "cast('" ~ var('date_spine_end') ~ "' as date)",
    ) }}

),

final as (

    select
        cast(date_day as date) as date_day,
        cast(extract(year from date_day) as integer) as year_number,
        cast(extract(quarter from date_day) as integer) as quarter_number,
        cast(extract(month from date_day) as integer) as month_number,
        cast(extract(day from date_day) as integer) as day_of_month,
        cast({{ iso_day_of_week('date_day') }} as integer) as iso_day_of_week,
        {{ iso_day_of_week('date_day') }} in (6, 7) as is_weekend
    from days

)

select * from final
