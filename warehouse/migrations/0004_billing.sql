-- Billing tables, written by `billing` (see billing/src/lib.rs).
-- Invoices and their lines, drafts and issued ones; `document` is the invoice JSON.
CREATE TABLE IF NOT EXISTS {db}.billing_invoices (
    invoice_number String,
    partner_id     String,
    period         String,
    revision       UInt32,
    status         String,
    currency       String,
    total_bytes    UInt64,
    subtotal       String,
    total          String,
    document       String,
    created_at     DateTime('UTC')
) ENGINE = MergeTree
ORDER BY (period, partner_id, status, invoice_number);

CREATE TABLE IF NOT EXISTS {db}.billing_invoice_lines (
    invoice_number String,
    partner_id     String,
    period         String,
    status         String,
    line_no        UInt32,
    kind           String,
    description    String,
    bytes          UInt64,
    quantity       String,
    unit           String,
    unit_price     String,
    amount         String,
    currency       String,
    created_at     DateTime('UTC')
) ENGINE = MergeTree
ORDER BY (period, partner_id, status, invoice_number, line_no);

-- What each issued invoice billed, per tracking id and usage period: its own
-- period's usage, and late usage of earlier periods billed as adjustments.
-- Late usage of a period = its usage now minus the sum billed for it here.
CREATE TABLE IF NOT EXISTS {db}.billing_billed_usage (
    invoice_number   String,
    partner_id       String,
    billed_in_period String,
    usage_period     String,
    tracking_id      String,
    bytes            UInt64,
    issued_at        DateTime('UTC')
) ENGINE = MergeTree
ORDER BY (partner_id, usage_period, tracking_id);
