-- Routing reason 6, "recovered", also covers a job: the instance that held the claim
-- acknowledged the interaction (a deferred reply) and died (or stalled) before it queued the
-- job, which is also when it confirms the claim. The first fallback's sweep took the lapsed
-- claim, heard from Discord that the interaction was already acknowledged, and queued the job
-- itself. Such a job's row has reason 6 and, as every job row, `served_by` the instance whose
-- run posted the answer.
--
-- Only the column's documentation changes, as in 0002; existing rows keep their codes.

COMMENT ON COLUMN ledger.reason IS 'Routing reason: 0 primary, 1 primary down, 2 primary overloaded, 3 all overloaded, 4 none alive, 5 degraded (Redis unreachable, static rule), 6 recovered (the instance that held the claim answered or acknowledged and died before confirming; the fallback that swept its claim recorded the answer on its behalf, served_by the instance that answered, or queued its job, served_by the instance that ran it).';
