-- Accounts withdrawn by an administrator (`users disable`): kept for the records and
-- signatures that name them, refused at sign-in, their sessions ended and tokens void.
ALTER TABLE users ADD COLUMN disabled_at_ms BIGINT;
-- When the password was last set (at creation, by its owner, or reset by an administrator).
ALTER TABLE users ADD COLUMN password_set_at_ms BIGINT;
UPDATE users SET password_set_at_ms = created_at_ms;
-- 1 after an administrator's reset: the password only serves to choose a new one (the
-- administrator knows it, and a password is also its owner's electronic signature).
ALTER TABLE users ADD COLUMN password_change_due BIGINT NOT NULL DEFAULT 0;
