"""Sharing adapters: cards, archives, registries (directory, HTTP, Hugging Face), pulling into the cache,
and a static explore site. The CLI verbs are `adapt pack | publish | search | pull | hub site | hub serve`."""
