{#- The project's own copy of dbt_utils.expression_is_true, with the same arguments: dbt packages cannot
    be installed where this project is built and tested (`dbt deps` reaches neither hub.getdbt.com nor
    GitHub). Where they can be, add dbt_utils to packages.yml and use its test instead. -#}
{#- A business invariant: every row satisfies `expression` (the rows that do not are the failures). On a column,
    the expression continues the column (`expression: ">= 0"`). Narrow it with the standard `where` config. -#}
{% test expression_is_true(model, expression, column_name=none) %}
    select *
    from {{ model }}
    where not ({{ column_name ~ ' ' if column_name else '' }}{{ expression }})
{% endtest %}
