"""Stage 1: candidate instruction data from a vision LLM behind any OpenAI-compatible API.

`client` talks to the model server (limits, retries, request cache); `prompts` builds the requests; `parse`
turns replies into conversations; `candidates` runs a whole job into the `candidates` dataset; `batch` does
the same through the Batch API.
"""
