-- The role the reporting job's certificate maps to (pg_ident.conf).
CREATE ROLE reporting LOGIN;
GRANT pg_read_all_data TO reporting;
