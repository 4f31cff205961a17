"""Reading and writing CT volumes: DICOM, NIfTI, NRRD and MetaImage, as HU float32 ``[z, y, x]``."""

from ctdenoise.io.dicom import PADDING_KEYS
from ctdenoise.io.readers import read_volume
from ctdenoise.io.volume import Volume
from ctdenoise.io.writers import check_paths, validate_output_path, write_volume

__all__ = ["PADDING_KEYS", "Volume", "check_paths", "read_volume", "validate_output_path", "write_volume"]
