"""`python -m mnistjax run|list|reproduce ...`: the console script `mnistjax`."""

from mnistjax import programs

programs.main()
