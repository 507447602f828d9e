-- The embedded log lives in its own SQLite file (DATA_DIR/log.db, created by the producers
-- crate) so its group-commit writer never queues behind the store's writes, and it is the same
-- whichever store runs. Its tables in the store were never written; remove them.
DROP TABLE IF EXISTS log_consumer_offsets;
DROP TABLE IF EXISTS log_records;
