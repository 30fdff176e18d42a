"""The API's insert statement writes its rollup inbox rows and checks its references itself, so
the two statement triggers skip it (DESIGN.md: Citus runs no statement triggers, so new code
writes the inbox in the ingest statement).

`metering.ingest_sql.events_insert` inserts the events, their inbox rows and the key-share locks
on their accounts and meters in one statement (a data-modifying CTE), with the transaction-local
setting `meterops.inbox_written` set to `on` around it. Each trigger now carries
`WHEN (current_setting('meterops.inbox_written', true) IS DISTINCT FROM 'on')`, so that statement
neither writes a second inbox row nor checks twice; every other writer (COPY, the ORM, the test
factories, raw SQL) never sets it and keeps both triggers, unchanged. The setting is reset to
`off` right after the statement (and a rolled-back savepoint or transaction undoes it), so
nothing else in the transaction is exempted. The delete triggers of 0010 are untouched.
"""

from django.db import migrations

TRIGGERS = """
DROP TRIGGER metering_usageevent_inbox ON metering_usageevent;
CREATE TRIGGER metering_usageevent_inbox
AFTER INSERT ON metering_usageevent
REFERENCING NEW TABLE AS new_events
FOR EACH STATEMENT
{when}
EXECUTE FUNCTION metering_usageevent_to_inbox();

DROP TRIGGER metering_usageevent_references ON metering_usageevent;
CREATE TRIGGER metering_usageevent_references
AFTER INSERT ON metering_usageevent
REFERENCING NEW TABLE AS new_events
FOR EACH STATEMENT
{when}
EXECUTE FUNCTION metering_usageevent_check_references();
"""

FORWARD = TRIGGERS.format(
    when="WHEN (current_setting('meterops.inbox_written', true) IS DISTINCT FROM 'on')"
)
BACKWARD = TRIGGERS.format(when="")


class Migration(migrations.Migration):
    dependencies = [("metering", "0010_usage_event_reference_check")]

    operations = [migrations.RunSQL(FORWARD, BACKWARD)]
