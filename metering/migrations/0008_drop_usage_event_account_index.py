"""Drop the event table's single-column index on account_id: the unique key (account_id,
source, transaction_id) and usage_event_acct_time (account_id, meter_id, occurred_at) both lead
with the account, so every lookup by account (the foreign-key check of an account delete
included) is served without it, and each event insert maintained one index more for nothing."""

import django.db.models.deletion
from django.db import migrations, models


class Migration(migrations.Migration):
    dependencies = [
        ("metering", "0007_corrections_partial_index"),
    ]

    operations = [
        migrations.AlterField(
            model_name="usageevent",
            name="account",
            field=models.ForeignKey(
                db_index=False,
                on_delete=django.db.models.deletion.PROTECT,
                related_name="events",
                to="metering.account",
            ),
        ),
    ]
