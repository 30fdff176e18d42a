"""Check a correction's target only for corrections, not once per inserted event.

The self-referencing foreign key `corrects` queued a deferred referential check for every
inserted row, run at commit, although only corrections (a handful) have a target: for a
1,000-event batch a thousand queued trigger events that each fetch the row again to find a
NULL. A constraint trigger with `WHEN (NEW.corrects_id IS NOT NULL)` is evaluated when the row
is inserted and queues nothing for the others; for a correction it checks, at commit like the
deferred foreign key, that the event it corrects exists. Events are append-only (migration
0002 refuses UPDATE and DELETE), so a target that exists cannot disappear afterwards, which is
all the key's other half guarded.
"""

import django.db.models.deletion
from django.db import migrations, models

FORWARD = """
CREATE OR REPLACE FUNCTION metering_usageevent_check_corrects() RETURNS trigger AS $$
BEGIN
    IF NOT EXISTS (SELECT 1 FROM metering_usageevent e WHERE e.id = NEW.corrects_id) THEN
        RAISE EXCEPTION 'usage event % corrects event %, which does not exist',
            NEW.id, NEW.corrects_id
            USING ERRCODE = 'foreign_key_violation';
    END IF;
    RETURN NULL;
END;
$$ LANGUAGE plpgsql;

CREATE CONSTRAINT TRIGGER metering_usageevent_corrects_exists
AFTER INSERT ON metering_usageevent
DEFERRABLE INITIALLY DEFERRED
FOR EACH ROW WHEN (NEW.corrects_id IS NOT NULL)
EXECUTE FUNCTION metering_usageevent_check_corrects();
"""

BACKWARD = """
DROP TRIGGER IF EXISTS metering_usageevent_corrects_exists ON metering_usageevent;
DROP FUNCTION IF EXISTS metering_usageevent_check_corrects();
"""


class Migration(migrations.Migration):
    dependencies = [
        ("metering", "0010_usage_event_reference_check"),
    ]

    operations = [
        # The check first, so no correction is inserted unchecked between the two steps.
        migrations.RunSQL(FORWARD, BACKWARD),
        migrations.AlterField(
            model_name="usageevent",
            name="corrects",
            field=models.ForeignKey(
                blank=True,
                db_constraint=False,
                db_index=False,
                null=True,
                on_delete=django.db.models.deletion.PROTECT,
                related_name="corrections",
                to="metering.usageevent",
            ),
        ),
    ]
