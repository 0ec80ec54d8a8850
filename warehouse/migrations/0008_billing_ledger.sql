-- Billing as a ledger (see billing/src/lib.rs, "The ledger").
--
-- billing_ledger: one row per issued invoice, written by one INSERT of one
-- row, so an invoice and the usage it billed are recorded together or not at
-- all. `document` is the invoice JSON; `billed_*` are parallel arrays of what
-- it billed per usage period and tracking id (signed: a correction that
-- lowers an earlier period's usage is negative); `settled` lists the manual
-- adjustments it carried. `issue_id` is random per issuing run. Readers take
-- one row per invoice number: the first by (issued_at, issue_id); another row
-- of the same number (a second issue that raced the lock) is ignored and
-- reported by `billing reconcile`.
CREATE TABLE IF NOT EXISTS {db}.billing_ledger (
    invoice_number       String,
    partner_id           String,
    period               String,
    issue_id             UInt64,
    issued_at            DateTime('UTC'),
    currency             String,
    total                String,
    document             String,
    billed_periods       Array(String),
    billed_tracking_ids  Array(String),
    billed_bytes         Array(Int64),
    settled              Array(String),
    snapshot             String
) ENGINE = MergeTree
ORDER BY (partner_id, period, invoice_number, issue_id);

-- billing_adjustments: manual corrections recorded by `billing adjust`
-- (a credit or a charge for a partner and usage period, in bytes priced at
-- the margin of that period or as an amount, with a reason and who). The
-- next invoice issued for the partner carries it and lists its id in
-- billing_ledger.settled. Never changed or deleted.
CREATE TABLE IF NOT EXISTS {db}.billing_adjustments (
    adjustment_id  String,
    partner_id     String,
    period         String,
    kind           String,
    bytes          UInt64,
    amount         String,
    reason         String,
    author         String,
    created_at     DateTime('UTC')
) ENGINE = MergeTree
ORDER BY (partner_id, period, adjustment_id);

-- Invoices issued before the ledger: one ledger row per invoice number (the
-- first issued document), with the usage billed per usage period and
-- tracking id taken once even where a concurrent issue recorded it twice.
-- Only numbers not in the ledger yet: re-running this statement after a
-- failure adds nothing twice.
INSERT INTO {db}.billing_ledger (invoice_number, partner_id, period, issue_id, issued_at, currency, total, document, billed_periods, billed_tracking_ids, billed_bytes, settled, snapshot)
SELECT i.invoice_number, i.partner_id, i.period, toUInt64(0), i.first_at, i.currency, i.total, i.document, b.ps, b.ts, b.bs, emptyArrayString(), ''
FROM (
    SELECT invoice_number, any(partner_id) AS partner_id, any(period) AS period, min(created_at) AS first_at,
           argMin(currency, created_at) AS currency, argMin(total, created_at) AS total, argMin(document, created_at) AS document
    FROM {db}.billing_invoices
    WHERE status = 'issued' AND invoice_number GLOBAL NOT IN (SELECT invoice_number FROM {db}.billing_ledger)
    GROUP BY invoice_number
) AS i
ALL LEFT JOIN (
    SELECT invoice_number, groupArray(usage_period) AS ps, groupArray(tracking_id) AS ts, groupArray(toInt64(bytes)) AS bs
    FROM (
        SELECT invoice_number, usage_period, tracking_id, any(bytes) AS bytes
        FROM {db}.billing_billed_usage GROUP BY invoice_number, usage_period, tracking_id
    ) AS u
    GROUP BY invoice_number
) AS b USING (invoice_number);

-- What every issued invoice billed, one row per usage period and tracking
-- id, from the ledger (every row, the ignored second issues included: filter
-- with the invoice numbers of `billing reconcile` when one is reported).
-- billing_billed_usage keeps the rows written before the ledger; nothing
-- writes it any more.
CREATE VIEW IF NOT EXISTS {db}.billing_billed AS
SELECT invoice_number, partner_id, period AS billed_in_period, issue_id, issued_at,
       billed_periods AS usage_period, billed_tracking_ids AS tracking_id, billed_bytes AS bytes
FROM {db}.billing_ledger
ARRAY JOIN billed_periods, billed_tracking_ids, billed_bytes;
