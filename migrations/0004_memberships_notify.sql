-- Every change to a membership (insert, role change, removal, and the cascades of deleting a user
-- or an org) announces the user it concerns, once committed, to every listening instance: their
-- cached roles are dropped however the change was made. A TRUNCATE announces '*': drop them all.
CREATE FUNCTION notify_membership_change() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
  PERFORM pg_notify('backplane_memberships', COALESCE(NEW.user_id, OLD.user_id));
  RETURN NULL;
END
$$;
--> statement-breakpoint
CREATE TRIGGER memberships_notify AFTER INSERT OR UPDATE OR DELETE ON memberships
  FOR EACH ROW EXECUTE FUNCTION notify_membership_change();
--> statement-breakpoint
CREATE FUNCTION notify_memberships_truncated() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
  PERFORM pg_notify('backplane_memberships', '*');
  RETURN NULL;
END
$$;
--> statement-breakpoint
CREATE TRIGGER memberships_truncate_notify AFTER TRUNCATE ON memberships
  FOR EACH STATEMENT EXECUTE FUNCTION notify_memberships_truncated();
