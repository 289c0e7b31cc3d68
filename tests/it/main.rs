//! Integration tests: the real `opcrm-import` binary, run as a user would run it.

mod check;
mod common;
mod contacts_by_email;
mod emulator;
mod emulator_21;
mod emulator_notes;
mod emulator_servers;
mod exactly_once;
mod external_s3;
mod faults;
mod form_reuse;
mod hostile_18;
mod hostile_19;
mod hostile_input;
mod hostile_server;
mod notes;
mod old_state;
mod pin;
mod run;
mod settle;
mod shape;
mod source_shape;
mod streaming;
mod throttle_models;
mod undo;
mod ux;
