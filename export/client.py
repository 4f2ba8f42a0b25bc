"""python -m export.client (from the repository): the serving client, tf_fastbat.serving.client, also installed as
the console script tf-fastbat-client."""

from tf_fastbat.serving.client import main

if __name__ == "__main__":
    main(prog="export.client")
