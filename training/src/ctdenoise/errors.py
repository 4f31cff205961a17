"""The exception and warning types that reach users as single lines."""

from __future__ import annotations

import warnings


class CTDenoiseError(Exception):
    """A problem with the user's input or environment.

    The message is one line that names the problem and, where there is one, the fix. The command
    line prints it as ``error: <message>`` and exits with status 2; it never shows a traceback.

    Examples:
        >>> from ctdenoise import read_volume
        >>> try:
        ...     read_volume("missing.nii.gz")
        ... except CTDenoiseError as error:
        ...     print(str(error)[:40])
        input missing.nii.gz does not exist: che
    """


class DenoiseCancelled(CTDenoiseError):
    """The caller's ``cancel()`` returned True: the run stopped and nothing was returned or written.

    Examples:
        >>> import numpy as np
        >>> from ctdenoise import denoise_array
        >>> try:
        ...     denoise_array(np.linspace(-1000, 1000, 2 * 64 * 64).reshape(2, 64, 64), cancel=lambda: True)
        ... except DenoiseCancelled as stop:
        ...     print(stop)
        denoising cancelled: no output was written
    """


class CTDenoiseWarning(UserWarning):
    """Something about the input or the model looks wrong, but the run can go on.

    Emitted with :func:`warnings.warn`, so Python users see it on stderr, tests can catch it, and the
    command line prints it as ``warning: <message>`` (or a ``{"event": "warning"}`` JSON line).

    Examples:
        >>> import warnings
        >>> from ctdenoise import denoise_volume, read_volume
        >>> with warnings.catch_warnings(record=True) as caught:
        ...     warnings.simplefilter("always", CTDenoiseWarning)
        ...     _ = denoise_volume(read_volume("../data/totalsegmentator/example_ct_sm.nii.gz"))
        >>> "spacing 3 mm is far outside" in str(caught[0].message)
        True
    """


def warn(message: str) -> None:
    """Emit ``message`` as a :class:`CTDenoiseWarning`."""
    warnings.warn(message, CTDenoiseWarning, stacklevel=2)
