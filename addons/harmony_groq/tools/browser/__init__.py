"""harmony's ``browser`` tool, run by the proxy: search, open, find, as gpt-oss's reference
browser (``gpt_oss/tools/simple_browser``) shows them to the model."""
