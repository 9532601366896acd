-- Which provider of the chain made each attempt's call (its configured name); NULL for the
-- attempts before this migration and for those that made no call.
ALTER TABLE attempts ADD COLUMN provider TEXT;
