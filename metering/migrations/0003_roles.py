"""Create the staff groups. Their permissions are synced by metering.roles after migrate."""

from django.db import migrations

ROLE_NAMES = ("Support", "Manager", "Auditor")


def create_groups(apps, schema_editor):
    Group = apps.get_model("auth", "Group")
    for name in ROLE_NAMES:
        Group.objects.get_or_create(name=name)


class Migration(migrations.Migration):
    dependencies = [
        ("metering", "0002_rollup_inbox_trigger"),
        ("auth", "0012_alter_user_first_name_max_length"),
    ]
    operations = [migrations.RunPython(create_groups, migrations.RunPython.noop)]
