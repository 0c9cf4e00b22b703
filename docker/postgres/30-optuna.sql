-- Runs once, when the postgres service initialises its empty volume: the database the sweep's
-- Optuna study lives in (CONVLENS_SWEEP_STORAGE of the trainer containers), so every sweep
-- worker, in compose or on another machine, shares one study.
CREATE DATABASE optuna;
