"""The authenticated enrichment API behind `attackmap serve`: API keys with roles and a tenant (`keys`),
an audit trail of every request and refusal (`audit`), the endpoints (`app`), the queue for the flows
(`queue`) and the analysts' review page (`review_page.html`)."""
