{#- The warehouse-wide key of a live online order. Postgres ids are plain integers; the prefix keeps them apart
    from the POS's order numbers (S001-000123) and the history's ids (H-O-…, H-S-…). -#}
{% macro online_order_key(order_id) -%}
    'ONL-' || cast({{ order_id }} as varchar)
{%- endmacro %}
