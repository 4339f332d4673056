package server

import "time"

// timeNow is the clock of audit records (a variable for tests).
var timeNow = time.Now
