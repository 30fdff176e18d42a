"""Check an event's account and meter once per insert statement instead of once per row.

The foreign keys from metering_usageevent to metering_account and metering_meter queued two
referential checks per inserted event (a query and a row lock each, run at commit): for a
1,000-event batch about as much work as the insert itself. The same guarantee, set-based:

- after each insert statement (the API's batch insert, COPY, the ORM), one trigger locks the
  distinct accounts and meters of the new rows FOR KEY SHARE, as a foreign-key check does, and
  refuses the statement (foreign_key_violation) when one is missing;
- deleting an account or a meter that has events (or changing its id) is refused by a row
  trigger on that table; because the inserting transaction holds its key-share lock until it
  commits, the delete waits for it and then sees its events. A delete that got there first
  makes the insert's lock find no row, and the insert fails instead. Either way no event can
  point at nothing, as with a foreign key.

The Django fields keep on_delete=PROTECT, so the ORM refuses such deletes before the database
does.
"""

import django.db.models.deletion
from django.db import migrations, models

FORWARD = """
CREATE OR REPLACE FUNCTION metering_usageevent_check_references() RETURNS trigger AS $$
DECLARE
    wanted bigint;
    found bigint;
BEGIN
    SELECT count(DISTINCT account_id) INTO wanted FROM new_events;
    IF wanted = 0 THEN
        RETURN NULL;  -- nothing inserted (every row of the batch already existed)
    END IF;
    SELECT count(*) INTO found FROM (
        SELECT 1 FROM metering_account a
        WHERE a.id IN (SELECT account_id FROM new_events)
        ORDER BY a.id
        FOR KEY SHARE
    ) locked;
    IF found < wanted THEN
        RAISE EXCEPTION 'a usage event refers to an account that does not exist'
            USING ERRCODE = 'foreign_key_violation';
    END IF;
    SELECT count(DISTINCT meter_id) INTO wanted FROM new_events;
    SELECT count(*) INTO found FROM (
        SELECT 1 FROM metering_meter m
        WHERE m.id IN (SELECT meter_id FROM new_events)
        ORDER BY m.id
        FOR KEY SHARE
    ) locked;
    IF found < wanted THEN
        RAISE EXCEPTION 'a usage event refers to a meter that does not exist'
            USING ERRCODE = 'foreign_key_violation';
    END IF;
    RETURN NULL;
END;
$$ LANGUAGE plpgsql;

CREATE TRIGGER metering_usageevent_references
AFTER INSERT ON metering_usageevent
REFERENCING NEW TABLE AS new_events
FOR EACH STATEMENT EXECUTE FUNCTION metering_usageevent_check_references();

CREATE OR REPLACE FUNCTION metering_account_keep_events() RETURNS trigger AS $$
BEGIN
    IF (TG_OP = 'DELETE' OR NEW.id <> OLD.id)
       AND EXISTS (SELECT 1 FROM metering_usageevent e WHERE e.account_id = OLD.id) THEN
        RAISE EXCEPTION 'account % has usage events', OLD.id
            USING ERRCODE = 'foreign_key_violation';
    END IF;
    RETURN CASE WHEN TG_OP = 'DELETE' THEN OLD ELSE NEW END;
END;
$$ LANGUAGE plpgsql;

CREATE TRIGGER metering_account_keep_events
BEFORE DELETE OR UPDATE OF id ON metering_account
FOR EACH ROW EXECUTE FUNCTION metering_account_keep_events();

CREATE OR REPLACE FUNCTION metering_meter_keep_events() RETURNS trigger AS $$
BEGIN
    IF (TG_OP = 'DELETE' OR NEW.id <> OLD.id)
       AND EXISTS (SELECT 1 FROM metering_usageevent e WHERE e.meter_id = OLD.id) THEN
        RAISE EXCEPTION 'meter % has usage events', OLD.id
            USING ERRCODE = 'foreign_key_violation';
    END IF;
    RETURN CASE WHEN TG_OP = 'DELETE' THEN OLD ELSE NEW END;
END;
$$ LANGUAGE plpgsql;

CREATE TRIGGER metering_meter_keep_events
BEFORE DELETE OR UPDATE OF id ON metering_meter
FOR EACH ROW EXECUTE FUNCTION metering_meter_keep_events();
"""

BACKWARD = """
DROP TRIGGER IF EXISTS metering_meter_keep_events ON metering_meter;
DROP FUNCTION IF EXISTS metering_meter_keep_events();
DROP TRIGGER IF EXISTS metering_account_keep_events ON metering_account;
DROP FUNCTION IF EXISTS metering_account_keep_events();
DROP TRIGGER IF EXISTS metering_usageevent_references ON metering_usageevent;
DROP FUNCTION IF EXISTS metering_usageevent_check_references();
"""


class Migration(migrations.Migration):
    dependencies = [
        ("metering", "0009_rolled_up_feed"),
    ]

    operations = [
        # The checks first, so no insert runs unchecked between the two steps.
        migrations.RunSQL(FORWARD, BACKWARD),
        migrations.AlterField(
            model_name="usageevent",
            name="account",
            field=models.ForeignKey(
                db_constraint=False,
                db_index=False,
                on_delete=django.db.models.deletion.PROTECT,
                related_name="events",
                to="metering.account",
            ),
        ),
        migrations.AlterField(
            model_name="usageevent",
            name="meter",
            field=models.ForeignKey(
                db_constraint=False,
                on_delete=django.db.models.deletion.PROTECT,
                related_name="events",
                to="metering.meter",
            ),
        ),
    ]
