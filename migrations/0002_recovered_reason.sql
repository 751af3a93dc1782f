-- Routing reason 6, "recovered": the row of an interaction answered without a job whose
-- answering instance died (or stalled) between its answer and its claim confirmation, which is
-- where such a row is recorded. The first fallback's sweep then took the lapsed claim, tried
-- to answer, heard from Discord that the interaction was already answered, and recorded the
-- row on the answering instance's behalf: `served_by` names the instance that answered, and
-- the reason says the row was recovered rather than what routing decided.
--
-- Only the column's documentation changes: the codes are the application's (keyshard-ledger
-- `Routing`), and existing rows keep theirs.

COMMENT ON COLUMN ledger.reason IS 'Routing reason: 0 primary, 1 primary down, 2 primary overloaded, 3 all overloaded, 4 none alive, 5 degraded (Redis unreachable, static rule), 6 recovered (recorded by the fallback that swept the lapsed claim of an instance that answered and died before confirming; served_by is the instance that answered).';
