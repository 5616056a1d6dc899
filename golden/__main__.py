import sys

from golden.generate import main

sys.exit(main(sys.argv[1:]))
