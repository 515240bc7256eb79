//! The cost section's workload: realistic, varied invoice texts of about 200 tokens and
//! an invoice-extraction system prompt of about 1,500 tokens (instructions and worked
//! examples), all deterministic: row `i` always yields the same text.

use std::fmt::Write;

/// Sellers: name, street, city and country, VAT or tax id, the currency they bill in.
const VENDORS: [(&str, &str, &str, &str, &str); 12] = [
    (
        "Hartmann Logistik GmbH",
        "Industriestraße 12",
        "70565 Stuttgart, Germany",
        "VAT DE284716503",
        "EUR",
    ),
    (
        "Northwind Traders Ltd",
        "4 Harbour Road",
        "Dublin 2, Ireland",
        "VAT IE6388047V",
        "EUR",
    ),
    (
        "Blue Ridge Software LLC",
        "1180 Peachtree St NE, Suite 400",
        "Atlanta, GA 30309, USA",
        "EIN 58-2291734",
        "USD",
    ),
    (
        "Café Lumière SARL",
        "27 rue des Tanneurs",
        "69002 Lyon, France",
        "TVA FR40 812345678",
        "EUR",
    ),
    (
        "Kowalski & Nowak Sp. z o.o.",
        "ul. Marszałkowska 84",
        "00-514 Warszawa, Poland",
        "VAT PL5252468831",
        "EUR",
    ),
    (
        "Pacific Coast Print Co.",
        "2290 Mission Street",
        "San Francisco, CA 94110, USA",
        "EIN 94-3158826",
        "USD",
    ),
    (
        "Van der Berg Installatietechniek B.V.",
        "Keizersgracht 311",
        "1016 EE Amsterdam, Netherlands",
        "BTW NL853912774B01",
        "EUR",
    ),
    (
        "Summit Office Supplies Inc.",
        "77 Commerce Drive",
        "Denver, CO 80202, USA",
        "EIN 84-1637720",
        "USD",
    ),
    (
        "Oficina Técnica Ruiz S.L.",
        "Calle de Alcalá 158",
        "28028 Madrid, Spain",
        "NIF B86512237",
        "EUR",
    ),
    (
        "Greenfield Catering Services",
        "15 Market Square",
        "Boston, MA 02109, USA",
        "EIN 04-3312958",
        "USD",
    ),
    (
        "Studio Bianchi S.r.l.",
        "Via della Spiga 9",
        "20121 Milano, Italy",
        "P.IVA IT09876540151",
        "EUR",
    ),
    (
        "Nordlys IT-Drift AS",
        "Storgata 41",
        "0182 Oslo, Norway",
        "Org.nr 918 442 731 MVA",
        "EUR",
    ),
];

const CUSTOMERS: [&str; 8] = [
    "Meridian Health Partners, Cleveland OH",
    "Atelier Dupont & Fils, Paris",
    "Brightwater Hotels Group, Edinburgh",
    "Schulz Maschinenbau AG, Bielefeld",
    "Orchard Valley School District, Yakima WA",
    "Lindqvist Arkitekter AB, Stockholm",
    "Harbor Point Dental Clinic, Miami FL",
    "Fundación Solaris, Barcelona",
];

/// Line items: description and a typical unit price.
const ITEMS: [(&str, f64); 20] = [
    ("Freight, palletised, per pallet", 420.0),
    ("Software licence, annual, per seat", 189.0),
    ("On-site consulting, per hour", 135.0),
    ("Remote support retainer, monthly", 950.0),
    ("Laptop docking station USB-C", 214.5),
    ("Printer toner cartridge, black", 68.9),
    ("Business cards, 500 pcs, matte", 42.0),
    ("Catering, lunch buffet per person", 24.5),
    ("Conference room hire, full day", 780.0),
    ("Heating system maintenance visit", 310.0),
    ("Replacement valve DN25, brass", 57.25),
    ("Cloud backup storage, per TB/month", 23.0),
    ("Translation EN-DE, per 1,000 words", 118.0),
    ("Travel expenses (train, hotel), flat", 265.4),
    ("Office chair, ergonomic, grey", 349.0),
    ("Copy paper A4 80 g, box of 5 reams", 27.8),
    ("Security audit, fixed price", 2450.0),
    ("Architectural drawings, revision", 480.0),
    ("Espresso machine descaling service", 95.0),
    ("Network switch 24-port PoE", 612.0),
];

const NOTES: [&str; 6] = [
    "Please quote the invoice number with your payment.",
    "Goods remain our property until paid in full.",
    "Thank you for your business - questions to accounts@ our domain.",
    "Late payments accrue interest at 8% above the base rate.",
    "Delivery note attached; partial delivery, balance to follow.",
    "Prices include the agreed 5% framework discount.",
];

const MONTHS: [&str; 12] = [
    "January",
    "February",
    "March",
    "April",
    "May",
    "June",
    "July",
    "August",
    "September",
    "October",
    "November",
    "December",
];

/// SplitMix64, seeded per row.
struct Rng(u64);

impl Rng {
    fn for_row(i: usize) -> Self {
        Self(0x1BAD_5EED ^ (i as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15))
    }

    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
}

/// Groups thousands with commas, two decimals: `12,345.60`.
fn money(amount: f64) -> String {
    let cents = (amount * 100.0).round() as u64;
    let whole = (cents / 100).to_string();
    let mut grouped = String::new();
    for (k, c) in whole.chars().enumerate() {
        if k > 0 && (whole.len() - k).is_multiple_of(3) {
            grouped.push(',');
        }
        grouped.push(c);
    }
    format!("{grouped}.{:02}", cents % 100)
}

/// The invoice text of row `i`: about 200 `o200k` tokens of an invoice as OCR or an
/// e-mail would give it (seller, buyer, dates, two or three lines, totals, payment,
/// sometimes a note).
pub fn invoice_text(i: usize) -> String {
    let mut rng = Rng::for_row(i);
    let (name, street, city, tax_id, currency) = VENDORS[rng.below(VENDORS.len())];
    let customer = CUSTOMERS[rng.below(CUSTOMERS.len())];
    let month = rng.below(12);
    let day = 1 + rng.below(28);
    let mut text = String::new();
    let _ = writeln!(
        text,
        "INVOICE No. INV-2026-{:05}\nIssued: {day} {} 2026 | Payment terms: {} days net",
        i,
        MONTHS[month],
        [14, 30, 45][rng.below(3)]
    );
    let _ = writeln!(text, "From: {name}, {street}, {city}. {tax_id}");
    let _ = writeln!(
        text,
        "Bill to: {customer}. Customer ref: PO-{}",
        10_000 + rng.below(90_000)
    );
    let _ = writeln!(text, "Pos | Description | Qty | Unit price | Amount");
    let mut subtotal = 0.0;
    for pos in 1..=2 + rng.below(2) {
        let (description, price) = ITEMS[rng.below(ITEMS.len())];
        let quantity = 1 + rng.below(12);
        let unit = price * (0.9 + rng.below(21) as f64 / 100.0);
        let amount = unit * quantity as f64;
        subtotal += amount;
        let _ = writeln!(
            text,
            "{pos} | {description} | {quantity} | {} | {} {currency}",
            money(unit),
            money(amount)
        );
    }
    let rate = if currency == "USD" {
        [0.0, 6.25, 8.875][rng.below(3)]
    } else {
        [19.0, 20.0, 21.0, 23.0][rng.below(4)]
    };
    let tax = subtotal * rate / 100.0;
    let _ = writeln!(
        text,
        "Subtotal {} {currency}; tax {rate}% {} {currency}; TOTAL DUE {} {currency}",
        money(subtotal),
        money(tax),
        money(subtotal + tax)
    );
    let status = if rng.below(2) == 0 {
        format!(
            "Status: PAID by card on {} {} 2026, thank you.",
            1 + rng.below(28),
            MONTHS[(month + 1) % 12]
        )
    } else {
        format!(
            "Status: open. Please transfer to IBAN DE{:02} 3704 0044 0532 {:04} 00.",
            10 + rng.below(89),
            rng.below(10_000)
        )
    };
    text.push_str(&status);
    if rng.below(2) == 0 {
        text.push('\n');
        text.push_str(NOTES[rng.below(NOTES.len())]);
    }
    text
}

const INSTRUCTIONS: &str = "You are an accounts-payable assistant. Each user message holds the \
text of one supplier invoice, as it came out of OCR or an e-mail body: it may have broken \
lines, stray characters, column separators and words in several languages. Read the whole \
text, then extract exactly five fields and return them as JSON that follows the schema you \
are given. Never add fields, never explain, never wrap the JSON in prose or code fences.

Fields:

1. vendor (string): the legal name of the company that issued the invoice and is to be \
paid, as written on the invoice, including its legal form (GmbH, Ltd, LLC, SARL, S.L., \
B.V., AS, Inc., S.r.l., Sp. z o.o.). Do not include the address, the VAT or tax number, or \
a department. The vendor is the seller (\"From\", \"Supplier\", \"Issued by\", letterhead), \
never the customer (\"Bill to\", \"Customer\", \"Ship to\", \"Invoice address\"). When the \
text names both a trading name and a legal name, return the legal name.

2. total (number): the final amount due for this invoice, taxes included, after discounts \
and credits, as a plain number with a dot as the decimal separator and no thousands \
separators or currency signs: \"TOTAL DUE 2,784.60 EUR\" gives 2784.6. If the invoice shows \
several totals (net, gross, balance brought forward), take the gross amount due for this \
invoice alone. European formats such as \"2.784,60\" mean 2784.6 too. Never compute a total \
from the lines when the invoice states one; if it states none, add the line amounts and \
the tax.

3. currency (string): \"EUR\" or \"USD\", from the currency code or sign next to the total \
(€, EUR, Euro give EUR; $, USD, US dollars give USD). If the total has no currency, use the \
currency of the line amounts.

4. paid (boolean): true only when the text says this invoice has been paid (\"PAID\", \
\"paid by card\", \"payment received\", \"settled\", \"balance 0.00\", a receipt). Payment \
instructions, an IBAN, a due date or payment terms mean it is still open: false. A \
reminder (\"second notice\", \"overdue\") is false as well.

5. lines (array of strings): one string per invoice line item, in the order of the \
invoice, each written as \"<description> x <quantity> = <amount>\" with the amount as a \
plain number: \"Freight, palletised, per pallet x 3 = 1260\". Leave out subtotal, tax, \
shipping-only totals, discount summaries and notes; keep a shipping or travel line when it \
is a position of its own. If there are no line items, return an empty array.

General rules: use only what the text says. Keep names and descriptions in the language \
and spelling of the invoice, accents included; fix only obvious OCR splits inside a word. \
Ignore greetings, legal notes, bank details other than for the paid field, and anything \
after the signature. If the text holds two invoices, extract the first one. If a field \
cannot be found, still return the field: the empty string for vendor, 0 for total, EUR for \
currency, false for paid and an empty array for lines. Numbers are never strings.

Worked examples follow: the invoice text, then the JSON you would return.";

/// The worked examples' answers, written out (the rows they belong to are
/// [`EXAMPLE_ROWS`]; their texts are [`invoice_text`] of those rows).
const EXAMPLE_ROWS: [usize; 3] = [900_001, 900_002, 900_003];

/// The system prompt: instructions for invoice extraction followed by three worked
/// examples (about 1,500 `o200k` tokens; the bench prints the exact count).
pub fn system_prompt() -> String {
    let mut prompt = INSTRUCTIONS.to_string();
    for (n, row) in EXAMPLE_ROWS.into_iter().enumerate() {
        let _ = write!(
            prompt,
            "\n\nExample {}:\n{}\nAnswer: {}",
            n + 1,
            invoice_text(row),
            example_answer(row)
        );
    }
    prompt
}

/// A hand-checkable answer for an example row, derived from its text.
fn example_answer(row: usize) -> String {
    let text = invoice_text(row);
    let field = |prefix: &str| {
        text.lines()
            .find_map(|l| l.strip_prefix(prefix))
            .unwrap_or_default()
            .to_string()
    };
    let vendor = field("From: ")
        .split(", ")
        .next()
        .unwrap_or_default()
        .to_string();
    let totals = field("Subtotal ");
    let due = totals
        .rsplit("TOTAL DUE ")
        .next()
        .unwrap_or_default()
        .to_string();
    let mut due_words = due.split(' ');
    let total: f64 = due_words
        .next()
        .unwrap_or_default()
        .replace(',', "")
        .parse()
        .unwrap_or_default();
    let currency = due_words.next().unwrap_or("EUR");
    let lines: Vec<String> = text
        .lines()
        .filter(|l| l.starts_with(|c: char| c.is_ascii_digit()))
        .map(|l| {
            let cells: Vec<&str> = l.split(" | ").collect();
            let amount = cells[4]
                .split(' ')
                .next()
                .unwrap_or_default()
                .replace(',', "");
            let amount: f64 = amount.parse().unwrap_or_default();
            format!("{} x {} = {amount}", cells[1], cells[2])
        })
        .collect();
    serde_json::json!({
        "vendor": vendor,
        "total": total,
        "currency": currency,
        "paid": text.contains("Status: PAID"),
        "lines": lines,
    })
    .to_string()
}
