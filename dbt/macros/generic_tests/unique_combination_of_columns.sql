{#- The project's own copy of dbt_utils.unique_combination_of_columns, with the same arguments: dbt packages cannot
    be installed where this project is built and tested (`dbt deps` reaches neither hub.getdbt.com nor
    GitHub). Where they can be, add dbt_utils to packages.yml and use its test instead. -#}
{#- The columns together identify a row: no combination appears twice. -#}
{% test unique_combination_of_columns(model, combination_of_columns) %}
    {%- set columns = combination_of_columns | join(', ') -%}
    select {{ columns }}, count(*) as occurrences
    from {{ model }}
    group by {{ columns }}
    having count(*) > 1
{% endtest %}
