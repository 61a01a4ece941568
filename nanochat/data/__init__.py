"""Stage 1 of the data path: documents and questions in, validated and chunked; bundled and public sources."""
