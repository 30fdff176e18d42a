"""The rolled-up feed (metering.models.RolledUpEvent): the rollup drain appends the events it
folds in, for the one downstream consumer that reads usage event by event. Starts empty: events
still in the rollup inbox reach it when drained; a consumer that kept its own queue until now
moves what it holds in its own migration."""

from django.db import migrations, models


class Migration(migrations.Migration):
    dependencies = [
        ("metering", "0008_drop_usage_event_account_index"),
    ]

    operations = [
        migrations.CreateModel(
            name="RolledUpEvent",
            fields=[
                (
                    "pk",
                    models.CompositePrimaryKey(
                        "account_id",
                        "event_id",
                        blank=True,
                        editable=False,
                        primary_key=True,
                        serialize=False,
                    ),
                ),
                ("account_id", models.BigIntegerField()),
                ("event_id", models.BigIntegerField()),
            ],
            options={
                "verbose_name": "rolled-up event",
                "verbose_name_plural": "rolled-up feed",
            },
        ),
    ]
