//! Tests of the window stage (unit tests and property tests against polars).
use super::*;
