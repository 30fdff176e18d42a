"""The rollup inbox carries each event's account, so the drain can claim a backlog an account at
a time (see metering.rollups_sql.CLAIM_BATCH). Pending rows get their account from the event,
and the insert trigger now copies it."""

import django.db.models.deletion
from django.db import migrations, models

BACKFILL = """
ALTER TABLE metering_rollupinbox ADD COLUMN account_id bigint;
UPDATE metering_rollupinbox i SET account_id = e.account_id
FROM metering_usageevent e WHERE e.id = i.event_id;
ALTER TABLE metering_rollupinbox ALTER COLUMN account_id SET NOT NULL;

CREATE OR REPLACE FUNCTION metering_usageevent_to_inbox() RETURNS trigger AS $$
BEGIN
    INSERT INTO metering_rollupinbox (event_id, account_id) SELECT id, account_id FROM new_events;
    RETURN NULL;
END;
$$ LANGUAGE plpgsql;
"""

BACKWARD = """
CREATE OR REPLACE FUNCTION metering_usageevent_to_inbox() RETURNS trigger AS $$
BEGIN
    INSERT INTO metering_rollupinbox (event_id) SELECT id FROM new_events;
    RETURN NULL;
END;
$$ LANGUAGE plpgsql;

ALTER TABLE metering_rollupinbox DROP COLUMN account_id;
"""


class Migration(migrations.Migration):
    dependencies = [("metering", "0005_rollups")]

    operations = [
        migrations.SeparateDatabaseAndState(
            database_operations=[migrations.RunSQL(BACKFILL, BACKWARD)],
            state_operations=[
                migrations.AddField(
                    model_name="rollupinbox",
                    name="account",
                    field=models.ForeignKey(
                        db_constraint=False,
                        db_index=False,
                        on_delete=django.db.models.deletion.DO_NOTHING,
                        related_name="+",
                        to="metering.account",
                    ),
                    preserve_default=False,
                ),
            ],
        ),
        migrations.AddIndex(
            model_name="rollupinbox",
            index=models.Index(fields=["account", "event_id"], name="rollup_inbox_account"),
        ),
    ]
