"""The one exception type of the media package, shaped like an OpenAI error."""

from __future__ import annotations

# Values of MediaError.code, one per kind of failure, so that clients and tests can tell them apart.
INVALID_MEDIA_PART = "invalid_media_part"
INVALID_IMAGE = "invalid_image"
INVALID_VIDEO = "invalid_video"
UNSUPPORTED_FORMAT = "unsupported_media_format"
IMAGE_TOO_LARGE = "image_too_large"
MEDIA_TOO_LARGE = "media_too_large"
VIDEO_TOO_LONG = "video_too_long"
TOO_MANY_FRAMES = "too_many_frames"
TOO_MANY_MEDIA_ITEMS = "too_many_media_items"
INVALID_URL = "invalid_media_url"
UNSUPPORTED_URL_SCHEME = "unsupported_url_scheme"
LOCAL_MEDIA_DISABLED = "local_media_disabled"
PATH_NOT_ALLOWED = "path_not_allowed"
MEDIA_NOT_FOUND = "media_not_found"
REMOTE_MEDIA_DISABLED = "remote_media_disabled"
DOMAIN_NOT_ALLOWED = "domain_not_allowed"
DOWNLOAD_FAILED = "download_failed"
DOWNLOAD_TIMEOUT = "download_timeout"
PLACEHOLDER_MISMATCH = "media_placeholder_mismatch"


class MediaError(ValueError):
    """A media part that cannot be loaded or processed.

    ``param`` is the OpenAI-style path of the content part (``messages[0].content[1]``) and the
    message names it too, with the limit that was hit or the fix. The server returns these as
    HTTP 400 errors with ``param`` and ``code`` copied into the error object.
    """

    def __init__(self, message: str, param: str | None = None, code: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.param = param
        self.code = code

    def __repr__(self) -> str:
        return f"MediaError({self.message!r}, param={self.param!r}, code={self.code!r})"


def describe_part(param: str | None) -> str:
    """Return the name of a content part for use in a message: its path, or a generic phrase."""
    return param if param else "the media part"
