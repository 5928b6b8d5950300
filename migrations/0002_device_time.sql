-- Clock-skew correction (docs/contract.md, "Clock skew"): when ingest-api stores an event at a
-- time corrected for its device's clock, `device_time` keeps the event's timestamp as the device
-- sent it. NULL when `time` is that timestamp (no correction). A nullable column without a
-- default is a catalog change only: no existing row is rewritten, and a NULL costs a row no byte
-- beyond its null bitmap.
ALTER TABLE events ADD COLUMN device_time timestamptz;
