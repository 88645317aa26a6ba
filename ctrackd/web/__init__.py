"""The HTTP side of the daemon: number requests from the site and the snippet.

`static/ctrack.js` is the website snippet the daemon serves as `GET /ctrack.js`;
docs/snippet.md describes it and the HTTP contract it speaks.
"""
