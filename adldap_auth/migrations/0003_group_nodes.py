"""The nesting of every group of the membership scope moves from DirectoryGroup (managed groups
only) to GroupNode (every group whose nesting counts). The next run rebuilds it: an incremental
run without stored nesting is run as a full one. NestingState holds its version, and
``unsettled_since``: memberships written by a run that did not store its nesting (it died),
so that the next run rechecks every user's memberships."""

from django.db import migrations, models


class Migration(migrations.Migration):

    dependencies = [
        ("adldap_auth", "0002_group_nesting"),
    ]

    operations = [
        migrations.RemoveField(model_name="directorygroup", name="member_digest"),
        migrations.RemoveField(model_name="directorygroup", name="member_keys"),
        migrations.RemoveField(model_name="directorygroup", name="parent_guids"),
        migrations.CreateModel(
            name="GroupNode",
            fields=[
                ("id", models.BigAutoField(auto_created=True, primary_key=True, serialize=False, verbose_name="ID")),
                ("guid", models.CharField(max_length=64, unique=True, verbose_name="directory id")),
                ("dn", models.TextField(verbose_name="distinguished name")),
                ("object_sid", models.CharField(blank=True, max_length=184)),
                ("fields", models.JSONField(default=dict)),
                ("in_scope", models.BooleanField(default=False)),
                ("member_keys", models.JSONField(default=list)),
                ("member_digest", models.CharField(max_length=64)),
                ("parent_guids", models.JSONField(default=list)),
            ],
            options={
                "verbose_name": "group of the membership scope",
                "verbose_name_plural": "groups of the membership scope",
            },
        ),
        migrations.CreateModel(
            name="NestingState",
            fields=[
                ("id", models.BigAutoField(auto_created=True, primary_key=True, serialize=False, verbose_name="ID")),
                ("version", models.CharField(max_length=64)),
                ("written_at", models.DateTimeField()),
                ("unsettled_since", models.DateTimeField(blank=True, null=True)),
            ],
        ),
    ]
