{#- Debezium's operation codes as words: c (insert), u (update), d (delete), r (a row read by a snapshot),
    t (truncate, not emitted for these tables). -#}
{% macro decode_debezium_op(column) -%}
    case {{ column }}
        when 'c' then 'insert'
        when 'u' then 'update'
        when 'd' then 'delete'
        when 'r' then 'snapshot'
        when 't' then 'truncate'
    end
{%- endmacro %}
