"""The static files storage once `collectstatic` has run (settings.STATIC_COLLECTED)."""

from whitenoise.storage import CompressedManifestStaticFilesStorage


class CollectedStaticFilesStorage(CompressedManifestStaticFilesStorage):
    """WhiteNoise's hashed, compressed files, with hashed URLs even while DEBUG is on.

    Django's manifest storage hands out unhashed URLs under DEBUG, which WhiteNoise may not
    cache; `make run` (DEBUG on, files collected) then re-sent every file on every page. The
    hash is what lets a browser keep a file for a year, so use it whenever the files are there.
    """

    def url(self, name, force=False):
        return super().url(name, force=True)
