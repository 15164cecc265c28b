//! Tests of the forecast stage.
