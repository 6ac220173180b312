"""Name the markers as the documentation and ``syncldap --status`` do: "incremental markers"."""

from django.db import migrations


class Migration(migrations.Migration):
    dependencies = [
        ("adldap_auth", "0003_group_nodes"),
    ]

    operations = [
        migrations.AlterModelOptions(
            name="syncmarker",
            options={"verbose_name": "incremental marker", "verbose_name_plural": "incremental markers"},
        ),
    ]
