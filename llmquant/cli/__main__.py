"""python -m llmquant.cli"""

from . import main

main()
