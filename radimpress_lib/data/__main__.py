"""``python -m radimpress_lib.data {download,check}`` (see :func:`radimpress_lib.data.loading.main`)."""

import sys

from radimpress_lib.data.loading import main

if __name__ == "__main__":
    sys.exit(main())
