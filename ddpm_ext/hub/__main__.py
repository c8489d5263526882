"""`python -m ddpm_ext.hub push FOLDER --repo_id ...`: retry a push (see [`ddpm_ext.hub.push`])."""

import sys

from .push import main

sys.exit(main())
