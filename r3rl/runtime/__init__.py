"""What every stage runs on, below the tasks.

* `io.py`: files written atomically (JSON, JSONL), read back line by line;
* `file_checks.py`: damaged or unsafe files caught before they are loaded, output folders checked;
* `distributed.py`: the processes of a launched run and the work split over them;
* `seeds.py`: seeds derived from their parts, the same in 1 or N processes;
* `progress.py`: progress lines and tables;
* `chunks.py`: the sharded, resumable chunk runner of mining and evaluation.
"""
