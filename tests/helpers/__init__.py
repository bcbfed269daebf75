"""Shared test data and runners."""

# The rows of a report, written out here rather than taken from the package: a model that
# disappears from the package's list must fail the tests that expect it.
REPORT_MODELS = (
    "popularity",
    "user_popular",
    "user_recent",
    "itemknn",
    "als",
    "sasrec_no_logq",
    "sasrec_pretrain",
    "sasrec_two_stage",
    "two_stage_ranked",
)
