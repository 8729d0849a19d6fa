"""The HTTP edge: aiohttp routes, error rendering, SSE writing. The only place that imports aiohttp.web."""
