"""
WSGI config for config project.

It exposes the WSGI callable as a module-level variable named ``application``.

For more information on this file, see
https://docs.djangoproject.com/en/5.2/howto/deployment/wsgi/
"""

import os

from django.core.wsgi import get_wsgi_application

from config.chunked_requests import ReadChunkedBody
from config.warmup import warm_up

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "config.settings")

# Chunked request bodies are read, not taken for empty (config.chunked_requests).
application = ReadChunkedBody(get_wsgi_application())

# What the first request would otherwise load, loaded now (config.warmup).
warm_up()
