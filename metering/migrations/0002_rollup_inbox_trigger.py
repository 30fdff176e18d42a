"""Every new usage event gets a rollup inbox row in the same transaction, whatever wrote it.

A statement-level trigger with a transition table costs one INSERT ... SELECT per statement, so
a 1,000-row batch insert or a COPY pays once, not per row.
"""

from django.db import migrations

FORWARD = """
CREATE OR REPLACE FUNCTION metering_usageevent_to_inbox() RETURNS trigger AS $$
BEGIN
    INSERT INTO metering_rollupinbox (event_id) SELECT id FROM new_events;
    RETURN NULL;
END;
$$ LANGUAGE plpgsql;

CREATE TRIGGER metering_usageevent_inbox
AFTER INSERT ON metering_usageevent
REFERENCING NEW TABLE AS new_events
FOR EACH STATEMENT EXECUTE FUNCTION metering_usageevent_to_inbox();

-- Events are append-only: refuse UPDATE and DELETE at the database, not only in code.
CREATE OR REPLACE FUNCTION metering_usageevent_append_only() RETURNS trigger AS $$
BEGIN
    RAISE EXCEPTION 'usage events are append-only; record a correction event instead'
        USING ERRCODE = 'restrict_violation';
END;
$$ LANGUAGE plpgsql;

CREATE TRIGGER metering_usageevent_no_update
BEFORE UPDATE OR DELETE ON metering_usageevent
FOR EACH ROW EXECUTE FUNCTION metering_usageevent_append_only();
"""

BACKWARD = """
DROP TRIGGER IF EXISTS metering_usageevent_no_update ON metering_usageevent;
DROP FUNCTION IF EXISTS metering_usageevent_append_only();
DROP TRIGGER IF EXISTS metering_usageevent_inbox ON metering_usageevent;
DROP FUNCTION IF EXISTS metering_usageevent_to_inbox();
"""


class Migration(migrations.Migration):
    dependencies = [("metering", "0001_initial")]
    operations = [migrations.RunSQL(FORWARD, BACKWARD)]
