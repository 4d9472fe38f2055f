from sbrjob.cli import run

run()
