//! The sandbox: simulated GPU clouds speaking the `http` provider protocol. (In progress.)
