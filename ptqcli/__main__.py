"""python -m ptqcli: the ptq command."""

from ptqcli.cli import main

main(prog_name="ptq")
