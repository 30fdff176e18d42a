"""The default rules, active after `migrate` with no configuration: spike, drop and quota,
global, every meter, the kinds' default parameters (alerts.models.DEFAULT_PARAMS)."""

from django.db import migrations

DEFAULT_RULES = [
    ("default-spike", "Usage spike (3x the weekday normal)", "spike"),
    ("default-drop", "Usage drop (no usage for 48 h)", "drop"),
    ("default-quota", "Quota (80% and 100% of included units or the limit)", "quota"),
]


def create(apps, schema_editor):
    AlertRule = apps.get_model("alerts", "AlertRule")
    for code, name, kind in DEFAULT_RULES:
        AlertRule.objects.get_or_create(
            code=code, defaults={"name": name, "kind": kind, "scope": "global", "enabled": True}
        )


def remove(apps, schema_editor):
    AlertRule = apps.get_model("alerts", "AlertRule")
    AlertRule.objects.filter(code__in=[code for code, _, _ in DEFAULT_RULES]).delete()


class Migration(migrations.Migration):
    dependencies = [("alerts", "0001_initial")]

    operations = [migrations.RunPython(create, remove)]
